"""sharpgen: generate SDO/HMI SHARP Br magnetograms with controlled physical properties and
retrieve the real observations that match them.

Stages (one name in three places: ``rules/<stage>.smk`` -> ``workflow_scripts/<script>.py`` ->
``sharpgen.<module>``): data (synthetic / local / jsoc) -> patches -> gan -> sampling ->
directions -> ssl -> retrieval -> report.
"""

__version__ = "0.1.0"
