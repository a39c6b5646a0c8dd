"""riskmon's streaming shell and stream-side core: wire events, feature fold, ports, adapters, app."""
