"""REPORT.md sections: the comparison table and deltas, the write-up, "Which precision?", where pruning hurts."""
