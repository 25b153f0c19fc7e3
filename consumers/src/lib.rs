//! ledgerbus consumers (see DESIGN.md).
