//! Output plugin options for `START_REPLICATION`: wal2json's (both formats) and pgoutput's,
//! shared by `pgferry run` and `pgferry tap` so both ask the server for the same thing.

use crate::config::{Publications, Wal2JsonFormat};
use crate::decode::pgoutput::ProtocolVersion;

/// wal2json's escaping of names in `add-tables`: its parser (`string_to_SelectTable`) ends a
/// name at white space or a comma, splits schema from table at a dot, reads `*` as "all", and
/// takes the character after a backslash as it is; so each of those, the backslash itself and
/// quotes are escaped.
pub fn wal2json_table_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for ch in name.chars() {
        if matches!(ch, '\\' | '\'' | ',' | '.' | '*' | '"')
            || ch.is_ascii_whitespace()
            || ch == '\x0b'
        {
            out.push('\\');
        }
        out.push(ch);
    }
    out
}

/// wal2json's options: the format, transaction bounds with commit LSN and time, the tables.
pub fn wal2json_options(format: Wal2JsonFormat, add_tables: &[String]) -> Vec<(String, String)> {
    let mut options: Vec<(&str, &str)> = match format {
        Wal2JsonFormat::V2 => vec![
            ("format-version", "2"),
            ("include-transaction", "true"),
            ("include-lsn", "true"),
            ("include-timestamp", "true"),
            // Type names lose the quotes format_type gave them; the oid settles which type.
            ("include-type-oids", "true"),
            // The key as of the change: a key column renamed later is still found.
            ("include-pk", "true"),
        ],
        Wal2JsonFormat::V1 => vec![
            ("format-version", "1"),
            ("write-in-chunks", "true"),
            ("include-xids", "true"),
            ("include-lsn", "true"),
            ("include-timestamp", "true"),
        ],
    };
    let tables = add_tables.join(",");
    options.push(("add-tables", &tables));
    options
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

/// pgoutput's options: the protocol, the publications, streaming of large transactions
/// (protocol 2), logical messages (heartbeats; PostgreSQL ≥ 14) and binary values.
pub fn pgoutput_options(
    version: ProtocolVersion,
    publications: &Publications,
    server_version: u32,
    binary: bool,
) -> Vec<(String, String)> {
    let mut options = vec![
        ("proto_version".to_owned(), version.number().to_string()),
        // An identifier list: double quotes keep each name's case and punctuation.
        ("publication_names".to_owned(), publications.option_value()),
    ];
    if version >= ProtocolVersion::V2 {
        options.push(("streaming".to_owned(), "on".to_owned()));
    }
    if server_version >= 140_000 {
        options.push(("messages".to_owned(), "true".to_owned()));
    }
    if binary {
        options.push(("binary".to_owned(), "true".to_owned()));
    }
    options
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_escaped_for_add_tables() {
        assert_eq!(wal2json_table_name("plain"), "plain");
        assert_eq!(wal2json_table_name("a b.c,d*e'f"), "a\\ b\\.c\\,d\\*e\\'f");
        assert_eq!(
            wal2json_table_name("back\\slash\ttab \"q\""),
            "back\\\\slash\\\ttab\\ \\\"q\\\""
        );
    }

    #[test]
    fn each_format_asks_for_commit_positions_and_times() {
        let tables = vec!["public.a".to_owned(), "s\\.x.b".to_owned()];
        let v2 = wal2json_options(Wal2JsonFormat::V2, &tables);
        assert!(v2.contains(&("format-version".into(), "2".into())));
        assert!(v2.contains(&("include-transaction".into(), "true".into())));
        assert!(v2.contains(&("include-type-oids".into(), "true".into())));
        let v1 = wal2json_options(Wal2JsonFormat::V1, &tables);
        assert!(v1.contains(&("format-version".into(), "1".into())));
        assert!(v1.contains(&("write-in-chunks".into(), "true".into())));
        for options in [&v1, &v2] {
            assert!(options.contains(&("include-lsn".into(), "true".into())));
            assert!(options.contains(&("include-timestamp".into(), "true".into())));
            assert!(options.contains(&("add-tables".into(), "public.a,s\\.x.b".into())));
        }
    }

    #[test]
    fn pgoutput_asks_for_streaming_messages_and_binary_where_the_server_can() {
        let named =
            |value: serde_json::Value| Publications::from_value(Some(&value)).unwrap().unwrap();
        let v2 = pgoutput_options(
            ProtocolVersion::V2,
            &named(serde_json::json!(["my \"pub\""])),
            150_000,
            true,
        );
        assert!(v2.contains(&("proto_version".into(), "2".into())));
        assert!(v2.contains(&("publication_names".into(), "\"my \"\"pub\"\"\"".into())));
        assert!(v2.contains(&("streaming".into(), "on".into())));
        assert!(v2.contains(&("messages".into(), "true".into())));
        assert!(v2.contains(&("binary".into(), "true".into())));
        let several = pgoutput_options(
            ProtocolVersion::V1,
            &named(serde_json::json!("p1, \"P,2\"")),
            150_000,
            false,
        );
        assert!(several.contains(&("publication_names".into(), "\"p1\",\"P,2\"".into())));
        let v1 = pgoutput_options(ProtocolVersion::V1, &named("p".into()), 130_000, false);
        assert_eq!(
            v1,
            vec![
                ("proto_version".to_owned(), "1".to_owned()),
                ("publication_names".to_owned(), "\"p\"".to_owned())
            ]
        );
    }
}
