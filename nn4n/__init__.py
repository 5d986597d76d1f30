"""nn4n: biologically plausible recurrent networks."""
