//! COPY binary format: the stream header and rows of length-prefixed fields.
//!
//! ```text
//! header   "PGCOPY\n\xff\r\n\0"  Int32 flags (bit 16: OIDs included)  Int32 extension length, bytes
//! tuple    Int16 field count (-1 ends the data), then per field Int32 length (-1 = NULL) + bytes
//! ```
//!
//! [`CopyBinaryDecoder`] is fed the CopyData chunks as they arrive (a row may in principle span
//! chunks; PostgreSQL sends one row per chunk, which is the fast path) and yields rows whose
//! fields are `Bytes` slices of the chunk: no copy of the data.

use bytes::{Buf, Bytes, BytesMut};

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
const OIDS_FLAG: u32 = 1 << 16;

/// Why COPY binary data could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyBinaryError {
    /// The data does not start with the COPY binary signature.
    #[error("COPY data does not start with the binary signature (was FORMAT binary requested?)")]
    BadSignature,
    /// The header sets a critical flag we do not understand.
    #[error("COPY binary header has unknown critical flags {0:#010x}")]
    UnknownFlags(u32),
    /// A row has a different number of fields than expected.
    #[error("COPY row {row} has {found} fields, expected {expected}")]
    FieldCount {
        /// 0-based row number.
        row: u64,
        /// Fields in the row.
        found: i16,
        /// Fields expected.
        expected: usize,
    },
    /// A field length is negative (other than -1) or runs past the data.
    #[error("COPY row {row} field {field} has an invalid length {len}")]
    BadFieldLength {
        /// 0-based row number.
        row: u64,
        /// 0-based field number.
        field: usize,
        /// The declared length.
        len: i32,
    },
    /// The data ended inside the header or a row.
    #[error("COPY data ended in the middle of {0}")]
    Truncated(&'static str),
    /// Bytes followed the end-of-data trailer.
    #[error("COPY data continues after its end marker")]
    TrailingData,
}

/// One decoded row: each field is `None` for NULL or the raw binary value.
pub type CopyRow = Vec<Option<Bytes>>;

/// Incremental decoder of a COPY binary stream.
#[derive(Debug)]
pub struct CopyBinaryDecoder {
    expected_fields: usize,
    pending: BytesMut,
    header_done: bool,
    ended: bool,
    rows: u64,
    /// The current row's fields as (offset, length), reused from row to row.
    spans: Vec<(usize, usize)>,
}

impl CopyBinaryDecoder {
    /// A decoder for rows of `expected_fields` columns.
    pub fn new(expected_fields: usize) -> CopyBinaryDecoder {
        CopyBinaryDecoder {
            expected_fields,
            pending: BytesMut::new(),
            header_done: false,
            ended: false,
            rows: 0,
            spans: Vec::with_capacity(expected_fields),
        }
    }

    /// Rows decoded so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Whether the end-of-data marker was seen.
    pub fn is_ended(&self) -> bool {
        self.ended
    }

    /// Decodes every complete row in `chunk` (plus what was pending) into `out`, each field a
    /// `Bytes` slice of the chunk. [`decode_chunk_with`](Self::decode_chunk_with) is the
    /// allocation-free form for hot paths.
    pub fn decode_chunk(
        &mut self,
        chunk: Bytes,
        out: &mut Vec<CopyRow>,
    ) -> Result<(), CopyBinaryError> {
        self.decode_chunk_with(chunk, |row| {
            out.push(
                (0..row.len())
                    .map(|index| row.range(index).map(|range| row.data.slice(range)))
                    .collect(),
            );
            Ok::<(), CopyBinaryError>(())
        })
    }

    /// Decodes every complete row in `chunk` (plus what was pending), calling `on_row` with a
    /// view that borrows the chunk: no copy, no allocation per row. Stops at `on_row`'s error.
    pub fn decode_chunk_with<E: From<CopyBinaryError>>(
        &mut self,
        chunk: Bytes,
        mut on_row: impl FnMut(&RowView<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut data = if self.pending.is_empty() {
            chunk
        } else {
            self.pending.extend_from_slice(&chunk);
            self.pending.split().freeze()
        };
        if !self.header_done {
            match parse_header(&data)? {
                Some(len) => {
                    data.advance(len);
                    self.header_done = true;
                }
                None => {
                    self.pending.extend_from_slice(&data);
                    return Ok(());
                }
            }
        }
        loop {
            if data.is_empty() {
                return Ok(());
            }
            if self.ended {
                return Err(CopyBinaryError::TrailingData.into());
            }
            match self.parse_row(&data)? {
                RowParse::Row(len) => {
                    self.rows += 1;
                    on_row(&RowView {
                        data: &data,
                        spans: &self.spans,
                    })?;
                    data.advance(len);
                }
                RowParse::End => {
                    self.ended = true;
                    data.advance(2);
                }
                RowParse::Incomplete => {
                    self.pending.extend_from_slice(&data);
                    return Ok(());
                }
            }
        }
    }

    /// Checks that the stream ended cleanly, after the last chunk.
    pub fn finish(&self) -> Result<(), CopyBinaryError> {
        if !self.header_done {
            return Err(CopyBinaryError::Truncated("the header"));
        }
        if !self.pending.is_empty() {
            return Err(CopyBinaryError::Truncated("a row"));
        }
        Ok(())
    }

    /// Parses the row at the start of `data` into `self.spans`.
    fn parse_row(&mut self, data: &[u8]) -> Result<RowParse, CopyBinaryError> {
        let Some(count) = data.get(..2) else {
            return Ok(RowParse::Incomplete);
        };
        let count = i16::from_be_bytes([count[0], count[1]]);
        if count == -1 {
            return Ok(RowParse::End);
        }
        if usize::try_from(count).ok() != Some(self.expected_fields) {
            return Err(CopyBinaryError::FieldCount {
                row: self.rows,
                found: count,
                expected: self.expected_fields,
            });
        }
        self.spans.clear();
        let mut at = 2usize;
        for field in 0..self.expected_fields {
            let Some(len) = data.get(at..at + 4) else {
                return Ok(RowParse::Incomplete);
            };
            let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
            at += 4;
            if len == -1 {
                self.spans.push(NULL_SPAN);
                continue;
            }
            let Ok(size) = usize::try_from(len) else {
                return Err(CopyBinaryError::BadFieldLength {
                    row: self.rows,
                    field,
                    len,
                });
            };
            if data.len() < at + size {
                return Ok(RowParse::Incomplete);
            }
            self.spans.push((at, size));
            at += size;
        }
        Ok(RowParse::Row(at))
    }
}

/// Marks a NULL field in the span list.
const NULL_SPAN: (usize, usize) = (usize::MAX, 0);

/// One decoded row, borrowing the received data: field `i` is `None` for NULL.
#[derive(Debug)]
pub struct RowView<'a> {
    data: &'a Bytes,
    spans: &'a [(usize, usize)],
}

impl RowView<'_> {
    /// Number of fields.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether the row has no field.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Field `index`: `None` for NULL (or past the end).
    pub fn get(&self, index: usize) -> Option<&[u8]> {
        self.range(index).map(|range| &self.data[range])
    }

    fn range(&self, index: usize) -> Option<std::ops::Range<usize>> {
        match self.spans.get(index) {
            Some(&(start, len)) if start != usize::MAX => Some(start..start + len),
            _ => None,
        }
    }
}

/// Read access to a row's fields, whichever form the row has.
pub trait RowFields {
    /// Number of fields.
    fn field_count(&self) -> usize;
    /// Field `index`: `None` for NULL.
    fn field(&self, index: usize) -> Option<&[u8]>;
}

impl RowFields for RowView<'_> {
    fn field_count(&self) -> usize {
        self.len()
    }
    fn field(&self, index: usize) -> Option<&[u8]> {
        self.get(index)
    }
}

impl RowFields for CopyRow {
    fn field_count(&self) -> usize {
        self.len()
    }
    fn field(&self, index: usize) -> Option<&[u8]> {
        self.get(index).and_then(|field| field.as_deref())
    }
}

enum RowParse {
    Row(usize),
    End,
    Incomplete,
}

/// The header's length, `None` when more data is needed.
fn parse_header(data: &[u8]) -> Result<Option<usize>, CopyBinaryError> {
    let prefix = data.len().min(SIGNATURE.len());
    if data[..prefix] != SIGNATURE[..prefix] {
        return Err(CopyBinaryError::BadSignature);
    }
    let Some(fixed) = data.get(11..19) else {
        return Ok(None);
    };
    let flags = u32::from_be_bytes([fixed[0], fixed[1], fixed[2], fixed[3]]);
    // Bits 0-15 are reserved "critical" flags, bit 16 announces OIDs (never with our queries).
    if flags & 0xFFFF != 0 || flags & OIDS_FLAG != 0 {
        return Err(CopyBinaryError::UnknownFlags(flags));
    }
    let extension = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]) as usize;
    let total = 19usize.saturating_add(extension);
    Ok((data.len() >= total).then_some(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn header() -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        out
    }

    fn row(fields: &[Option<&[u8]>]) -> Vec<u8> {
        let mut out = BytesMut::new();
        out.put_i16(fields.len() as i16);
        for field in fields {
            match field {
                None => out.put_i32(-1),
                Some(bytes) => {
                    out.put_i32(bytes.len() as i32);
                    out.put_slice(bytes);
                }
            }
        }
        out.to_vec()
    }

    const TRAILER: [u8; 2] = [0xFF, 0xFF];

    #[test]
    fn decodes_rows_as_slices_of_the_chunk() {
        let data = [
            header(),
            row(&[Some(b"ab"), None]),
            row(&[Some(b""), Some(b"xyz")]),
            TRAILER.to_vec(),
        ]
        .concat();
        let mut decoder = CopyBinaryDecoder::new(2);
        let mut rows = Vec::new();
        decoder.decode_chunk(Bytes::from(data), &mut rows).unwrap();
        decoder.finish().unwrap();
        assert!(decoder.is_ended());
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0][0].as_deref(), Some(&b"ab"[..]));
        assert_eq!(rows[0][1], None);
        assert_eq!(rows[1][0].as_deref(), Some(&b""[..]));
        assert_eq!(decoder.rows(), 2);
    }

    #[test]
    fn rows_split_across_chunks_at_every_byte_decode_the_same() {
        let data = [
            header(),
            row(&[Some(b"hello"), Some(b"w")]),
            row(&[None, Some(b"z")]),
            TRAILER.to_vec(),
        ]
        .concat();
        for split in 0..data.len() {
            let mut decoder = CopyBinaryDecoder::new(2);
            let mut rows = Vec::new();
            decoder
                .decode_chunk(Bytes::copy_from_slice(&data[..split]), &mut rows)
                .unwrap();
            decoder
                .decode_chunk(Bytes::copy_from_slice(&data[split..]), &mut rows)
                .unwrap();
            decoder.finish().unwrap();
            assert_eq!(rows.len(), 2, "split at {split}");
            assert_eq!(rows[0][0].as_deref(), Some(&b"hello"[..]));
        }
    }

    #[test]
    fn malformed_data_is_a_typed_error() {
        let mut rows = Vec::new();
        assert_eq!(
            CopyBinaryDecoder::new(1).decode_chunk(Bytes::from_static(b"id,name\n"), &mut rows),
            Err(CopyBinaryError::BadSignature)
        );
        let wrong_count = [header(), row(&[Some(b"a")])].concat();
        assert!(matches!(
            CopyBinaryDecoder::new(2).decode_chunk(Bytes::from(wrong_count), &mut rows),
            Err(CopyBinaryError::FieldCount {
                found: 1,
                expected: 2,
                ..
            })
        ));
        let mut negative = [header(), 1i16.to_be_bytes().to_vec()].concat();
        negative.extend_from_slice(&(-7i32).to_be_bytes());
        assert!(matches!(
            CopyBinaryDecoder::new(1).decode_chunk(Bytes::from(negative), &mut rows),
            Err(CopyBinaryError::BadFieldLength { len: -7, .. })
        ));
        let mut truncated = CopyBinaryDecoder::new(1);
        truncated
            .decode_chunk(
                Bytes::from([header(), vec![0, 1, 0, 0]].concat()),
                &mut rows,
            )
            .unwrap();
        assert_eq!(truncated.finish(), Err(CopyBinaryError::Truncated("a row")));
        let after_end = [header(), TRAILER.to_vec(), row(&[None])].concat();
        assert_eq!(
            CopyBinaryDecoder::new(1).decode_chunk(Bytes::from(after_end), &mut rows),
            Err(CopyBinaryError::TrailingData)
        );
        let mut with_oids = SIGNATURE.to_vec();
        with_oids.extend_from_slice(&OIDS_FLAG.to_be_bytes());
        with_oids.extend_from_slice(&0u32.to_be_bytes());
        assert!(matches!(
            CopyBinaryDecoder::new(1).decode_chunk(Bytes::from(with_oids), &mut rows),
            Err(CopyBinaryError::UnknownFlags(_))
        ));
    }
}
