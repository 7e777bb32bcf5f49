//! Typed configuration with the old connectors' key names and clear validation errors.
