"""Budget refresh jobs: budget gauges from LiteLLM's database (or management API), refreshed on a
schedule by one aggregator process at a time under a fenced Redis lease (``docs/budgets.md``).

Wiring: ``jobs = BudgetJobs(settings, schema, registry)``; ``await jobs.start()`` on the running
loop; ``await jobs.stop()`` at shutdown.
"""

from aggregator.budgets.jobs import BudgetJobs, BudgetMetrics, RunReport

__all__ = ["BudgetJobs", "BudgetMetrics", "RunReport"]
