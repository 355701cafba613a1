"""The dataplane fence: ``kcm audit`` (who intrudes on the dataplane CPUs) and the shield's
plan and record. Pure judgement and planning over values; the reading lives in ``kcm.host`` and
``kcm.fence.reader``. May import kcm's core, ``kcm.host`` and ``kcm.state``; nothing imports it
but the CLI (and, in phase 2, reconcile)."""
