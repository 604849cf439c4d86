"""Search-level benchmarks (``amc-bench bench=compare|parallel|memory``): evidence that the search pays."""
