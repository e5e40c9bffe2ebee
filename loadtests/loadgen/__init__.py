"""gRPC load driver, scenarios and capacity reports for a real ``cocktail serve``.

Run ``python -m loadtests.loadgen --help``; ``make loadtest`` runs every
scenario of ``loadtests/workloads/demo.yaml`` briefly; docs/capacity.md holds
the figures it gave on the project's machine.
"""
