//! Replication stream frames (XLogData, primary keepalive) and standby status updates.
