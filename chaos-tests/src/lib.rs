//! Chaos tests: multi-process fault harness and simulation (filled in by the chaos issue).
