"""The Textual TUI over saved optimizer state: renders what optinspect.state computes, computes nothing."""
