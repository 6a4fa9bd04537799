"""The report: rows in, ``report.md`` and PNG figures out; it runs no model and imports no variant.

matplotlib is switched to its Agg backend here, before any figure module imports pyplot: the
report writes files only and never needs a display.
"""

import matplotlib

matplotlib.use("Agg")
