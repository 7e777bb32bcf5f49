//! `pgferry check`: every prerequisite of a PostgreSQL source, each with its fix.
