"""Helpers the test suite shares: real PostgreSQL, real Redis, database fixtures."""
