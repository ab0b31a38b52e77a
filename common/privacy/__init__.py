"""DP-SGD, accounting, what a site releases, its ledger, policy and audit trail."""
