"""Test double of ``notifications_utils`` (cds-snc/notification-utils 53.0.1).

Only the three modules the document download API used, with the same module names, function
names and signatures (anchor contract §6.1-6.3). Like the real package, ``request_helper`` and
``logging`` are Flask-bound: they read ``flask.request``, ``flask.g`` and
``flask.current_app`` and so raise "Working outside of ... context" when called from Quart
code without dd_compat's bridge. Used by tests/compat only when the real package is not
importable.
"""

IS_STANDIN = True
