//! ledgerbus ledger (see DESIGN.md).
