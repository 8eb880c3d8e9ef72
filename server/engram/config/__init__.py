"""Configuration: settings from the environment and the choice of database engine."""
