//! ledgerbus transport (see DESIGN.md).
