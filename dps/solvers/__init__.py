"""Solvers: DPS (:mod:`dps.solvers.dps`), the comparison methods, and the one method table
(:mod:`dps.solvers.methods`)."""
