//! The embedded memory store: to be written.
