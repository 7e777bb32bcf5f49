//! Which output plugin a LOG_BASED run streams through, and why: one rule for `pgferry run`,
//! `pgferry tap` and `pgferry check`.
//!
//! PostgreSQL 15.19 (and the same-day minor of every supported branch) added
//! `output_plugin_libraries`: a slot may use only the plugins it lists, `pgoutput` and
//! `test_decoding` by default, so wal2json works only where an administrator added it. The
//! rule for `"plugin": "auto"` (the default):
//!
//! 1. an existing slot keeps its plugin (old slots and state files resume as they were);
//! 2. a new slot uses pgoutput when the publication can be used: it publishes every selected
//!    table, or it does not exist and the role may create it;
//! 3. otherwise wal2json, when the server allows it (or cannot say: the allow-list is visible
//!    only to superusers and `pg_read_all_settings`);
//! 4. otherwise an error naming both fixes.
//!
//! A plugin the config forces is used as it is, or refused with the fix when the allow-list
//! leaves it out. Everything here is pure: the facts are read by the caller.

use crate::config::{OutputPlugin, PluginChoice, Publications};
use crate::pg::query::{quote_identifier, quote_literal};

/// The server's `output_plugin_libraries`, as far as the role may see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowList {
    /// The server has no such setting (a release before the allow-list): every plugin loads.
    Unrestricted,
    /// The listed plugin libraries, and whether a reload (not a restart) applies a change.
    Listed {
        /// Library names, in the server's order.
        plugins: Vec<String>,
        /// `pg_settings.context` allows `pg_reload_conf()` to apply a change.
        reloadable: bool,
    },
    /// The setting exists but this role may not read it (superusers and members of
    /// `pg_read_all_settings` may).
    Hidden,
}

impl AllowList {
    /// Reads the setting's text (`'pgoutput, test_decoding'`, entries possibly double-quoted).
    pub fn parse(setting: &str, reloadable: bool) -> AllowList {
        let plugins = setting
            .split(',')
            .map(|entry| entry.trim().trim_matches('"').trim().to_owned())
            .filter(|entry| !entry.is_empty())
            .collect();
        AllowList::Listed {
            plugins,
            reloadable,
        }
    }

    /// Whether `plugin` may be used: `None` when the role cannot see the list.
    pub fn allows(&self, plugin: OutputPlugin) -> Option<bool> {
        match self {
            AllowList::Unrestricted => Some(true),
            AllowList::Listed { plugins, .. } => Some(
                plugins
                    .iter()
                    .any(|listed| library_name(listed) == plugin.name()),
            ),
            AllowList::Hidden => None,
        }
    }

    /// The statements that add `plugin` to the list, for a superuser to run.
    pub fn allow_statement(&self, plugin: OutputPlugin) -> String {
        // A list setting takes one literal per entry: a single 'a, b' literal would become one
        // entry named "a, b".
        let list = match self {
            AllowList::Listed { plugins, .. } => {
                let mut entries: Vec<String> =
                    plugins.iter().map(|entry| quote_literal(entry)).collect();
                entries.push(quote_literal(plugin.name()));
                entries.join(", ")
            }
            _ => format!(
                "<the list SHOW output_plugin_libraries; prints, each entry quoted>, '{}'",
                plugin.name()
            ),
        };
        let apply = match self {
            AllowList::Listed {
                reloadable: false, ..
            } => "then restart PostgreSQL (this server applies the setting only at start)",
            _ => "SELECT pg_reload_conf();  -- a reload applies it to new connections; no restart",
        };
        format!("ALTER SYSTEM SET output_plugin_libraries = {list};\n{apply}")
    }

    /// What the list says, for messages: `output_plugin_libraries = 'pgoutput, test_decoding'`.
    pub fn describe(&self) -> String {
        match self {
            AllowList::Unrestricted => {
                "this server has no output_plugin_libraries (every plugin may load)".to_owned()
            }
            AllowList::Listed { plugins, .. } => {
                format!("output_plugin_libraries = '{}'", plugins.join(", "))
            }
            AllowList::Hidden => {
                "output_plugin_libraries cannot be read by this role (superusers and pg_read_all_settings can)".to_owned()
            }
        }
    }
}

/// A listed library without its directory or `.so` suffix (`$libdir/wal2json.so`).
fn library_name(entry: &str) -> &str {
    let base = entry.rsplit('/').next().unwrap_or(entry);
    base.strip_suffix(".so").unwrap_or(base)
}

/// The fix for a plugin the allow-list leaves out: the statement, the managed-service route,
/// and (for wal2json) pgoutput instead: `pgoutput_fix` when its publication needs one first.
pub fn allow_list_fix(
    allow: &AllowList,
    plugin: OutputPlugin,
    pgoutput_fix: Option<&str>,
) -> String {
    let mut fix = format!(
        "as a superuser run:\n{}\non a managed service (Amazon RDS/Aurora, Cloud SQL, Azure) add {} to output_plugin_libraries in the instance's parameter group (flags)",
        allow.allow_statement(plugin),
        plugin.name()
    );
    match (plugin, pgoutput_fix) {
        (OutputPlugin::Wal2Json, Some(publication)) => {
            fix.push_str(&format!("\nor let pgferry stream through pgoutput (built in, always allowed): {publication}"));
        }
        (OutputPlugin::Wal2Json, None) => fix.push_str(
            "\nor stream through pgoutput, built in and always allowed: \"plugin\": \"pgoutput\" (or \"auto\")",
        ),
        (OutputPlugin::PgOutput, _) => {}
    }
    fix
}

/// Whether a server error is the allow-list refusing an output plugin (SQLSTATE 42501,
/// `library "…" may not be used as an output plugin`).
pub fn is_refused_plugin(error: &crate::pg::PgError) -> bool {
    error.as_db_error().is_some_and(|db| {
        db.code == "42501" && db.message.contains("may not be used as an output plugin")
    })
}

/// What the publication offers a new pgoutput slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicationState {
    /// It exists and publishes every selected table.
    Covers,
    /// It exists but lacks these tables (`schema.table`, quoted where SQL needs it).
    Lacks(Vec<String>),
    /// Several publications are named and some do not exist (pgferry creates none of them):
    /// the error naming them, with its `HINT:`.
    Missing(String),
    /// It does not exist; `can_create` says whether this role may create it.
    Absent {
        /// The role owns every selected table (or is a superuser) and may create in the
        /// database.
        can_create: bool,
    },
}

/// Everything the choice depends on.
#[derive(Debug, Clone)]
pub struct PluginFacts<'a> {
    /// The slot's name.
    pub slot: &'a str,
    /// The plugin of the slot, when it exists.
    pub slot_plugin: Option<&'a str>,
    /// The publications' names.
    pub publication: &'a Publications,
    /// What the publication offers.
    pub publication_state: &'a PublicationState,
    /// The `CREATE PUBLICATION` statement for the selected tables.
    pub create_publication: &'a str,
    /// The server's allow-list.
    pub allow: &'a AllowList,
    /// The role pgferry connects as.
    pub user: &'a str,
}

/// The plugin to stream through, with the reason in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    /// The plugin.
    pub plugin: OutputPlugin,
    /// Why, for the start-up log line and `check`.
    pub reason: String,
    /// For wal2json chosen because the publication could not be used: what would let pgferry
    /// use pgoutput instead (named again if the server then refuses wal2json).
    pub pgoutput_fix: Option<String>,
}

impl Chosen {
    /// Logs the choice and its reason (the one start-up line), and hands it on.
    pub fn log(self) -> Chosen {
        tracing::info!(plugin = self.plugin.name(), reason = %self.reason, "output plugin chosen");
        self
    }
}

/// Why no plugin can be used: what was found and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What was found.
    pub detail: String,
    /// The fix, possibly several lines.
    pub fix: String,
}

impl Refusal {
    /// The refusal as one error text with its `HINT:`.
    pub fn message(&self) -> String {
        format!("{}\nHINT: {}", self.detail, self.fix)
    }
}

/// Applies the rule of this module's docs.
pub fn choose(requested: PluginChoice, facts: &PluginFacts<'_>) -> Result<Chosen, Refusal> {
    if let Some(used) = facts.slot_plugin {
        return keep_slot_plugin(requested, used, facts);
    }
    match requested {
        PluginChoice::Forced(plugin) => {
            refuse_unless_allowed(plugin, facts)?;
            Ok(Chosen {
                plugin,
                reason: format!("\"plugin\": \"{}\" in the config", plugin.name()),
                pgoutput_fix: None,
            })
        }
        PluginChoice::Auto => choose_for_new_slot(facts),
    }
}

fn keep_slot_plugin(
    requested: PluginChoice,
    used: &str,
    facts: &PluginFacts<'_>,
) -> Result<Chosen, Refusal> {
    let drop = format!(
        "SELECT pg_drop_replication_slot({});",
        quote_literal(facts.slot)
    );
    let Some(plugin) = OutputPlugin::from_name(used) else {
        return Err(Refusal {
            detail: format!("replication slot {:?} uses the output plugin {used:?}, which pgferry cannot decode (it reads pgoutput and wal2json)", facts.slot),
            fix: format!("set \"replication_slot\" to another name, or drop the slot (pgferry then copies the tables again): {drop}"),
        });
    };
    if let PluginChoice::Forced(wanted) = requested {
        if wanted != plugin {
            return Err(Refusal {
                detail: format!(
                    "replication slot {:?} uses the output plugin {used:?}, not {}",
                    facts.slot,
                    wanted.name()
                ),
                fix: format!("set \"plugin\" to {used:?} (or \"auto\"), set \"replication_slot\" to another name, or drop the slot: {drop}"),
            });
        }
    }
    if facts.allow.allows(plugin) == Some(false) {
        return Err(Refusal {
            detail: format!(
                "replication slot {:?} uses {used}, which this server's {} does not allow",
                facts.slot,
                facts.allow.describe()
            ),
            fix: format!(
                "{}\nor drop the slot and start over through pgoutput (the tables are copied again): {drop}",
                allow_list_fix(facts.allow, plugin, None)
                    .lines()
                    .filter(|line| !line.starts_with("or stream through pgoutput"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        });
    }
    Ok(Chosen {
        plugin,
        reason: format!("the existing slot {:?} uses {used}", facts.slot),
        pgoutput_fix: None,
    })
}

fn refuse_unless_allowed(plugin: OutputPlugin, facts: &PluginFacts<'_>) -> Result<(), Refusal> {
    if facts.allow.allows(plugin) == Some(false) {
        return Err(Refusal {
            detail: format!(
                "the server does not allow {} as an output plugin: {}",
                plugin.name(),
                facts.allow.describe()
            ),
            fix: allow_list_fix(facts.allow, plugin, None),
        });
    }
    Ok(())
}

/// Why the publication cannot serve a new pgoutput slot, and its fix; `None` when it can.
fn publication_problem(facts: &PluginFacts<'_>) -> Option<(String, String)> {
    let quoted = quote_identifier(facts.publication.first());
    match facts.publication_state {
        PublicationState::Covers | PublicationState::Absent { can_create: true } => None,
        PublicationState::Missing(message) => {
            let (detail, fix) = message.split_once("\nHINT: ").unwrap_or((message, ""));
            Some((detail.to_owned(), fix.to_owned()))
        }
        PublicationState::Lacks(missing) => Some((
            format!(
                "{} {} not publish {}",
                if facts.publication.several() {
                    "publications"
                } else {
                    "publication"
                },
                facts.publication.describe(),
                missing.join(", ")
            )
            .replace(
                " not publish",
                if facts.publication.several() {
                    " do not publish"
                } else {
                    " does not publish"
                },
            ),
            format!(
                "ALTER PUBLICATION {quoted} ADD TABLE {};",
                missing.join(", ")
            ),
        )),
        PublicationState::Absent { can_create: false } => Some((
            format!(
                "publication {:?} does not exist and role {:?} may not create it (it must own every selected table, or be a superuser, and have CREATE on the database)",
                facts.publication.first(), facts.user
            ),
            format!(
                "have the tables' owner or a superuser run: {};",
                facts.create_publication
            ),
        )),
    }
}

fn choose_for_new_slot(facts: &PluginFacts<'_>) -> Result<Chosen, Refusal> {
    let problem = publication_problem(facts);
    if let (PublicationState::Missing(_), Some((detail, fix))) = (facts.publication_state, &problem)
    {
        // Publications named on purpose are not traded for wal2json, which ignores them.
        return Err(Refusal {
            detail: detail.clone(),
            fix: fix.clone(),
        });
    }
    let pgoutput_allowed = facts.allow.allows(OutputPlugin::PgOutput) != Some(false);
    if problem.is_none() && pgoutput_allowed {
        let how = match facts.publication_state {
            PublicationState::Covers => "publishes every selected table",
            _ => "will be created for the selected tables",
        };
        return Ok(Chosen {
            plugin: OutputPlugin::PgOutput,
            reason: format!(
                "a new slot: pgoutput (built in) with publication {}, which {how}",
                facts.publication.describe()
            ),
            pgoutput_fix: None,
        });
    }
    let (why_not_pgoutput, pgoutput_fix) = problem.unwrap_or_else(|| {
        (
            format!(
                "the server does not allow pgoutput: {}",
                facts.allow.describe()
            ),
            facts.allow.allow_statement(OutputPlugin::PgOutput),
        )
    });
    match facts.allow.allows(OutputPlugin::Wal2Json) {
        Some(true) | None => Ok(Chosen {
            plugin: OutputPlugin::Wal2Json,
            reason: format!(
                "a new slot: wal2json, since pgoutput cannot be used ({why_not_pgoutput}){}",
                if facts.allow.allows(OutputPlugin::Wal2Json).is_none() {
                    "; whether the server allows wal2json shows when the slot is created"
                } else {
                    ""
                }
            ),
            pgoutput_fix: Some(pgoutput_fix),
        }),
        Some(false) => Err(Refusal {
            detail: format!(
                "no output plugin can be used for a new slot: {why_not_pgoutput}, and wal2json is not allowed ({})",
                facts.allow.describe()
            ),
            fix: format!(
                "either let pgferry use pgoutput: {pgoutput_fix}\nor allow wal2json: {}",
                facts.allow.allow_statement(OutputPlugin::Wal2Json)
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stock() -> AllowList {
        AllowList::parse("pgoutput, test_decoding", true)
    }

    fn facts<'a>(
        slot_plugin: Option<&'a str>,
        publication_state: &'a PublicationState,
        allow: &'a AllowList,
    ) -> PluginFacts<'a> {
        PluginFacts {
            slot: "macrometa_shop",
            slot_plugin,
            publication: Box::leak(Box::new(Publications::default_for_slot("macrometa_shop"))),
            publication_state,
            create_publication: "CREATE PUBLICATION \"macrometa_shop\" FOR TABLE \"public\".\"t\"",
            allow,
            user: "etl",
        }
    }

    const CAN_CREATE: PublicationState = PublicationState::Absent { can_create: true };
    const CANNOT_CREATE: PublicationState = PublicationState::Absent { can_create: false };

    #[test]
    fn the_allow_list_is_read_as_the_server_lists_it() {
        let list = AllowList::parse("pgoutput, \"test_decoding\", $libdir/wal2json.so", true);
        assert_eq!(list.allows(OutputPlugin::Wal2Json), Some(true));
        assert_eq!(list.allows(OutputPlugin::PgOutput), Some(true));
        assert_eq!(stock().allows(OutputPlugin::Wal2Json), Some(false));
        assert_eq!(
            AllowList::parse("", true).allows(OutputPlugin::PgOutput),
            Some(false)
        );
        assert_eq!(AllowList::Hidden.allows(OutputPlugin::Wal2Json), None);
        assert_eq!(
            AllowList::Unrestricted.allows(OutputPlugin::Wal2Json),
            Some(true)
        );
    }

    #[test]
    fn the_allow_statement_quotes_each_entry_and_says_how_it_applies() {
        assert_eq!(
            stock().allow_statement(OutputPlugin::Wal2Json),
            "ALTER SYSTEM SET output_plugin_libraries = 'pgoutput', 'test_decoding', 'wal2json';\nSELECT pg_reload_conf();  -- a reload applies it to new connections; no restart"
        );
        let restart = AllowList::parse("pgoutput", false).allow_statement(OutputPlugin::Wal2Json);
        assert!(
            restart.ends_with(
                "then restart PostgreSQL (this server applies the setting only at start)"
            ),
            "{restart}"
        );
        let hidden = AllowList::Hidden.allow_statement(OutputPlugin::Wal2Json);
        assert!(hidden.contains("SHOW output_plugin_libraries"), "{hidden}");
        let fix = allow_list_fix(&stock(), OutputPlugin::Wal2Json, None);
        assert!(fix.contains("parameter group"), "{fix}");
        assert!(fix.contains("\"plugin\": \"pgoutput\""), "{fix}");
    }

    #[test]
    fn an_existing_slot_keeps_its_plugin() {
        let allow = AllowList::parse("pgoutput, test_decoding, wal2json", true);
        let chosen = choose(
            PluginChoice::Auto,
            &facts(Some("wal2json"), &CAN_CREATE, &allow),
        )
        .unwrap();
        assert_eq!(chosen.plugin, OutputPlugin::Wal2Json);
        assert!(chosen.reason.contains("existing slot"), "{}", chosen.reason);
        let pgoutput = choose(
            PluginChoice::Auto,
            &facts(Some("pgoutput"), &CANNOT_CREATE, &stock()),
        )
        .unwrap();
        assert_eq!(pgoutput.plugin, OutputPlugin::PgOutput);
    }

    #[test]
    fn an_existing_wal2json_slot_on_a_server_that_refuses_it_names_both_ways_out() {
        let refusal = choose(
            PluginChoice::Auto,
            &facts(Some("wal2json"), &CAN_CREATE, &stock()),
        )
        .unwrap_err();
        assert!(
            refusal
                .detail
                .contains("output_plugin_libraries = 'pgoutput, test_decoding'"),
            "{refusal:?}"
        );
        assert!(
            refusal
                .fix
                .contains("'pgoutput', 'test_decoding', 'wal2json'"),
            "{refusal:?}"
        );
        assert!(
            refusal
                .fix
                .contains("pg_drop_replication_slot('macrometa_shop')"),
            "{refusal:?}"
        );
    }

    #[test]
    fn a_slot_of_another_plugin_is_refused_with_the_fix() {
        let forced = choose(
            PluginChoice::Forced(OutputPlugin::PgOutput),
            &facts(Some("wal2json"), &CAN_CREATE, &AllowList::Unrestricted),
        )
        .unwrap_err();
        assert!(forced.detail.contains("not pgoutput"), "{forced:?}");
        let unknown = choose(
            PluginChoice::Auto,
            &facts(Some("decoderbufs"), &CAN_CREATE, &stock()),
        )
        .unwrap_err();
        assert!(unknown.detail.contains("cannot decode"), "{unknown:?}");
    }

    #[test]
    fn a_new_slot_takes_pgoutput_when_the_publication_can_be_used() {
        for state in [PublicationState::Covers, CAN_CREATE] {
            let chosen = choose(PluginChoice::Auto, &facts(None, &state, &stock())).unwrap();
            assert_eq!(chosen.plugin, OutputPlugin::PgOutput, "{state:?}");
            assert!(
                chosen.reason.contains("publication \"macrometa_shop\""),
                "{}",
                chosen.reason
            );
        }
    }

    #[test]
    fn named_publications_that_do_not_exist_are_not_traded_for_wal2json() {
        let message = crate::source::slot_setup::missing_publications(
            &Publications::from_value(Some(&serde_json::json!(["p1", "p3"])))
                .unwrap()
                .unwrap(),
            &["p3".to_owned()],
            &[("public".to_owned(), "t".to_owned())],
        );
        let missing = PublicationState::Missing(message);
        let allow = AllowList::parse("pgoutput, wal2json", true);
        let refusal = choose(PluginChoice::Auto, &facts(None, &missing, &allow)).unwrap_err();
        assert!(
            refusal.detail.contains("publication \"p3\"")
                && refusal.detail.contains("does not exist"),
            "{refusal:?}"
        );
        assert!(
            refusal
                .fix
                .contains("CREATE PUBLICATION \"p3\" FOR TABLE \"public\".\"t\";"),
            "{refusal:?}"
        );
    }

    #[test]
    fn a_new_slot_falls_back_to_wal2json_only_where_the_server_may_allow_it() {
        let lacking = PublicationState::Lacks(vec!["public.b".into()]);
        let allow = AllowList::parse("pgoutput, wal2json", true);
        for state in [&lacking, &CANNOT_CREATE] {
            let chosen = choose(PluginChoice::Auto, &facts(None, state, &allow)).unwrap();
            assert_eq!(chosen.plugin, OutputPlugin::Wal2Json, "{state:?}");
            let hidden =
                choose(PluginChoice::Auto, &facts(None, state, &AllowList::Hidden)).unwrap();
            assert_eq!(hidden.plugin, OutputPlugin::Wal2Json);
            assert!(
                hidden.reason.contains("shows when the slot is created"),
                "{}",
                hidden.reason
            );
            let refusal = choose(PluginChoice::Auto, &facts(None, state, &stock())).unwrap_err();
            assert!(
                refusal.fix.contains("either let pgferry use pgoutput"),
                "{refusal:?}"
            );
            assert!(
                refusal.fix.contains("or allow wal2json: ALTER SYSTEM SET"),
                "{refusal:?}"
            );
        }
        let lacking = choose(PluginChoice::Auto, &facts(None, &lacking, &stock())).unwrap_err();
        assert!(
            lacking
                .fix
                .contains("ALTER PUBLICATION \"macrometa_shop\" ADD TABLE public.b;"),
            "{lacking:?}"
        );
        let owner = choose(PluginChoice::Auto, &facts(None, &CANNOT_CREATE, &stock())).unwrap_err();
        assert!(
            owner
                .fix
                .contains("CREATE PUBLICATION \"macrometa_shop\" FOR TABLE"),
            "{owner:?}"
        );
        assert!(
            owner.detail.contains("role \"etl\" may not create it"),
            "{owner:?}"
        );
    }

    #[test]
    fn a_forced_plugin_is_used_or_refused_with_the_allow_list_fix() {
        let forced = PluginChoice::Forced(OutputPlugin::Wal2Json);
        let refusal = choose(forced, &facts(None, &CAN_CREATE, &stock())).unwrap_err();
        assert!(
            refusal.detail.contains("does not allow wal2json"),
            "{refusal:?}"
        );
        assert!(refusal.fix.contains("ALTER SYSTEM SET output_plugin_libraries = 'pgoutput', 'test_decoding', 'wal2json';"), "{refusal:?}");
        let chosen = choose(
            forced,
            &facts(None, &CANNOT_CREATE, &AllowList::Unrestricted),
        )
        .unwrap();
        assert_eq!(chosen.reason, "\"plugin\": \"wal2json\" in the config");
    }
}
