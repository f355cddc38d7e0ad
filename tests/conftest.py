"""Makes the modules beside this file (shared by the unit and integration suites) importable from both."""
