"""Clock sanity: is the gateway's wall clock right? Sources, consensus, steps, and the verdict."""
