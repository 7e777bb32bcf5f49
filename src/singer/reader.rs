//! Reads Singer input on a thread of its own and hands it over in blocks of whole lines.
//!
//! Reading stdin and splitting lines happens while the loader parses, encodes and waits for
//! PostgreSQL; the channel holds at most a few blocks, so a slow database slows the reader
//! (backpressure) instead of growing memory.

use std::io::{BufRead, BufReader, Read};

use tokio::sync::mpsc;

use crate::singer::SingerError;

/// Target size of one block of lines.
const BLOCK_BYTES: usize = 1 << 20;
/// Blocks in flight between the reader thread and the loader.
const CHANNEL_BLOCKS: usize = 4;
/// Longest accepted line.
const MAX_LINE_BYTES: u64 = 512 << 20;

/// Consecutive input lines.
#[derive(Debug, Default)]
pub struct LineBlock {
    text: String,
    ends: Vec<usize>,
    first_line: u64,
}

impl LineBlock {
    /// The lines with their 1-based numbers, without line terminators; blank lines skipped.
    pub fn lines(&self) -> impl Iterator<Item = (u64, &str)> + '_ {
        let mut start = 0;
        self.ends
            .iter()
            .enumerate()
            .filter_map(move |(index, &end)| {
                let line = &self.text[start..end];
                start = end;
                let line = line.trim_end_matches(['\n', '\r']);
                (!line.trim().is_empty()).then_some((self.first_line + index as u64, line))
            })
    }

    /// Bytes of input held.
    pub fn len_bytes(&self) -> usize {
        self.text.len()
    }
}

/// The receiving end of the reader thread.
#[derive(Debug)]
pub struct LineReader {
    receiver: mpsc::Receiver<Result<LineBlock, SingerError>>,
}

impl LineReader {
    /// Starts a thread reading `input` to its end.
    pub fn spawn<R: Read + Send + 'static>(input: R) -> LineReader {
        let (sender, receiver) = mpsc::channel(CHANNEL_BLOCKS);
        let fallback = sender.clone();
        let spawned = std::thread::Builder::new()
            .name("singer-reader".into())
            .spawn(move || read_blocks(input, &sender));
        if let Err(error) = spawned {
            let _ = fallback.try_send(Err(SingerError::Read {
                line: 0,
                detail: format!("could not start the input reader thread: {error}"),
            }));
        }
        LineReader { receiver }
    }

    /// The next block, `None` at the end of the input.
    pub async fn next(&mut self) -> Option<Result<LineBlock, SingerError>> {
        self.receiver.recv().await
    }
}

fn read_blocks<R: Read>(input: R, sender: &mpsc::Sender<Result<LineBlock, SingerError>>) {
    let mut reader = BufReader::with_capacity(BLOCK_BYTES, input);
    let mut next_line = 1u64;
    loop {
        match read_block(&mut reader, next_line) {
            Ok(None) => return,
            Ok(Some(block)) => {
                next_line += block.ends.len() as u64;
                if sender.blocking_send(Ok(block)).is_err() {
                    return;
                }
            }
            Err(error) => {
                let _ = sender.blocking_send(Err(error));
                return;
            }
        }
    }
}

/// Reads whole lines until about [`BLOCK_BYTES`], or until the input has nothing more ready: a
/// quiet producer (a tap waiting for changes) must not hold back the lines it already wrote.
fn read_block<R: Read>(
    reader: &mut BufReader<R>,
    first_line: u64,
) -> Result<Option<LineBlock>, SingerError> {
    let mut bytes = Vec::with_capacity(64 * 1024);
    let mut ends = Vec::new();
    while bytes.len() < BLOCK_BYTES {
        let before = bytes.len();
        let read = reader
            .by_ref()
            .take(MAX_LINE_BYTES)
            .read_until(b'\n', &mut bytes)
            .map_err(|error| SingerError::Read {
                line: first_line + ends.len() as u64 - 1,
                detail: error.to_string(),
            })?;
        if read == 0 {
            break;
        }
        if read as u64 == MAX_LINE_BYTES && bytes.last() != Some(&b'\n') {
            return Err(SingerError::Read {
                line: first_line + ends.len() as u64 - 1,
                detail: format!(
                    "line {} is longer than {MAX_LINE_BYTES} bytes",
                    first_line + ends.len() as u64
                ),
            });
        }
        if let Err(error) = std::str::from_utf8(&bytes[before..]) {
            return Err(SingerError::Json {
                line: first_line + ends.len() as u64,
                detail: format!("not valid UTF-8 ({error})"),
            });
        }
        ends.push(bytes.len());
        if reader.buffer().is_empty() {
            break;
        }
    }
    if ends.is_empty() {
        return Ok(None);
    }
    // Every line was checked above, so this cannot fail; map rather than unwrap regardless.
    let text = String::from_utf8(bytes).map_err(|error| SingerError::Json {
        line: first_line,
        detail: format!("not valid UTF-8 ({error})"),
    })?;
    Ok(Some(LineBlock {
        text,
        ends,
        first_line,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn blocks_carry_line_numbers_and_skip_blank_lines() {
        let input = "{\"a\":1}\r\n\n{\"b\":2}\n{\"c\":3}".as_bytes().to_vec();
        let mut reader = LineReader::spawn(std::io::Cursor::new(input));
        let mut lines = Vec::new();
        while let Some(block) = reader.next().await {
            let block = block.unwrap();
            lines.extend(block.lines().map(|(n, l)| (n, l.to_owned())));
        }
        assert_eq!(
            lines,
            vec![
                (1, "{\"a\":1}".to_owned()),
                (3, "{\"b\":2}".to_owned()),
                (4, "{\"c\":3}".to_owned())
            ]
        );
    }

    #[tokio::test]
    async fn invalid_utf8_names_the_line() {
        let input = b"{}\n{\"a\":\"\xff\"}\n".to_vec();
        let mut reader = LineReader::spawn(std::io::Cursor::new(input));
        let error = reader.next().await.unwrap().unwrap_err().to_string();
        assert!(error.starts_with("line 2:"), "{error}");
    }
}
