"""Reading saved optimizer state safely, and the statistics of what is inside."""
