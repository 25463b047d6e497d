"""Analysis of training runs and evaluations: the tidy loaders, the paper's derived series, the paper's own
numbers, the catalog of figures and tables, and one plotting style. The notebooks under ``notebooks/`` are thin
users of this package, so every number they plot is computed (and unit-tested) here."""
