"""Registers detection, export and the table/suite tools with the evaluator registry."""
