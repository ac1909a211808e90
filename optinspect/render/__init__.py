"""Renderers: turn report objects into text, JSON, GitHub annotations or SARIF. They never compute."""
