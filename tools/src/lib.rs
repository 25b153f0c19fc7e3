//! ledgerbus tools (see DESIGN.md).
