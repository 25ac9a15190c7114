"""The kernel side: what failoverd wants programmed (plan), and the code that programs it."""
