"""Protocol-faithful fake servers that tests run on loopback."""
