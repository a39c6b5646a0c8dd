"""Pure machine-learning core of riskmon: feature schema, cleaning, networks, baselines, segments."""
