//! ledgerbus sequencer (see DESIGN.md).
