"""Stage "data", source jsoc: download SHARP CEA Br segments from JSOC with ``drms``: query, filter, export, fetch, resume.

Pipeline (:func:`download_records`):

1. **Query** the record set ``series[][start-end@cadence]`` (e.g.
   ``hmi.sharp_cea_720s[][2010.05.01_00:00:00_TAI-2010.06.01_00:00:00_TAI@8h]``) for the keywords
   in :data:`QUERY_KEYS`, with :meth:`drms.Client.query` (JSOC ``jsoc_info?op=rs_list``).
2. **Filter** (:func:`filter_records`): QUALITY bits outside ``quality_mask`` drop a record,
   ``|LON_FWT| > max_abs_lon_deg`` drops it (limb records are strongly foreshortened), and with
   ``require_noaa`` a HARP without a NOAA active region (``NOAA_AR <= 0``) is dropped. Records are
   sorted by (HARPNUM, T_REC) and cut to ``max_records``.
3. **Resume**: a record whose file is already in the cache directory and passes
   :func:`check_fits` (readable by astropy, file size equal to the size its FITS headers imply) is
   not exported or downloaded again.
4. **Export** the missing records' segment (``method=url``, ``protocol=fits``) in batches of
   ``batch_size`` records; each request is polled every ``poll_s`` seconds until it is done
   (statuses 1, 2 and 6 are pending, exactly as drms treats them; any other non-zero status is an
   error that carries JSOC's own message) or ``timeout_s`` passes.
5. **Download** the files with ``n_workers`` threads: each file goes to a ``.part`` sibling, is
   checked (byte count against Content-Length, then :func:`check_fits`) and renamed into place, so a
   killed run never leaves a half file under a final name. Failures are retried ``retries`` times
   with exponential back-off ``backoff_s * 2**attempt``.

The JSOC e-mail (config ``email`` or env ``JSOC_EMAIL``) is sent to JSOC only: every log record
passes through :func:`redacting_logs` and every error message through :func:`redact`, and nothing
the module writes contains it.
"""

from sharpgen.jsoc.client import *  # noqa: F401,F403
from sharpgen.jsoc.client import logger  # noqa: F401
from sharpgen.jsoc.download import *  # noqa: F401,F403
