"""Engine-neutral, vendor-neutral core: types, predictor, controller, hooks, config (numpy at most)."""
