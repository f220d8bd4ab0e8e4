//! distgate configuration (schema arrives with the configuration issue).
