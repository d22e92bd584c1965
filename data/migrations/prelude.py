"""Code run before every built-in migration program.

Deprecated APIs that still exist only warn; turning those warnings into errors
makes "old code fails under the installed versions" a crisp, executable check.
"""

PRELUDE = """\
import warnings
warnings.simplefilter("error", DeprecationWarning)
warnings.simplefilter("error", FutureWarning)
"""
