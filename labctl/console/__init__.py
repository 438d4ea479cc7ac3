"""`labctl console`: a scenario that stops for a person at the guest's serial console."""
