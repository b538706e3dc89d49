"""Shared pytest configuration for the taskraft test suite."""
