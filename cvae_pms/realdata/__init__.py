"""Real labelled Gaia XP spectra (the APOGEE DR17 x DR3 XP library) and what is learned from them."""
