//! ledgerbus gateway (see DESIGN.md).
