"""The ``--precision`` helpers the training app uses: the library's autocast factory and input-dtype mapping."""

# Both live in the library, next to the other precision rules; 3.3's training modules imported
# them from here.
from open_clip.precision import get_autocast, get_input_dtype  # noqa: F401 (re-export)
