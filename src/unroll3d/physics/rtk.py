"""RTK (Reconstruction Toolkit) backend for cone-beam CT on the CPU.

RTK's Joseph forward projector and its Joseph back projector are an exact adjoint pair.
Geometry comes in ASTRA's ``cone_vec`` convention, one row of 12 numbers per view:

* ``s = (sx, sy, sz)`` the source position,
* ``d = (dx, dy, dz)`` the centre of the detector,
* ``u`` the vector from detector pixel ``(r, c)`` to ``(r, c + 1)`` (along a row),
* ``v`` the vector from detector pixel ``(r, c)`` to ``(r + 1, c)`` (along a column),

all in the length unit of the voxel size, with the volume centred at the origin. The centre of
detector pixel ``(r, c)`` is ``d + (c - (cols - 1) / 2) u + (r - (rows - 1) / 2) v`` and the
centre of voxel ``(k, j, i)`` of a ``(D, H, W) = (z, y, x)`` array is
``((i - (W - 1) / 2) h, (j - (H - 1) / 2) h, (k - (D - 1) / 2) h)`` for voxel size ``h``.

Conversion to RTK. RTK's world frame is the ITK physical frame of the volume image, and RTK
describes every view by Euler angles about *its y axis* (gantry angle) plus out-of-plane and
in-plane angles; its FDK weights views by gaps between gantry angles. ASTRA orbits turn about
*z*. Joseph projection would be right in any rigidly moved frame, but FDK is only right if the
orbit axis is RTK's y, so we rotate the whole scene by ``R`` (a rotation of -90° about x):

    RTK (x', y', z') = R (x, y, z) = (x, z, -y),

i.e. ASTRA's z (our D axis) becomes RTK's y and ASTRA's y (our H axis) becomes RTK's -z. The
vectors ``s, d, u, v`` are all multiplied by ``R``. The volume array ``vol[k, j, i]`` (z, y, x)
becomes the RTK array ``vol.transpose(1, 0, 2)[::-1]``, indexed ``(z', y', x') = (-y, z, x)``,
with spacing ``h`` and a centred origin, so voxel positions are exactly ``R`` times the ASTRA
positions. (A rigid motion of the whole scene changes no line integral.)

The projection stack is an ITK image ``(cols, rows, views)``, i.e. a NumPy array
``(views, rows, cols)``, with spacing ``(|u|, |v|, 1)`` and origin
``(-(cols - 1) / 2 |u|, -(rows - 1) / 2 |v|, 0)``, so that physical detector coordinate
``(0, 0)`` is the detector centre ``d``; it is fed to
``AddProjection(R s, R d, R u / |u|, R v / |v|)``. The row and column vectors must be
orthogonal and have the same lengths for every view (one spacing per stack): this holds for
circular scans and for the Walnut data; anything else raises a ``ValueError``.
"""

from __future__ import annotations

import functools
import importlib
import types
import warnings

import numpy as np

__all__ = ["ASTRA_TO_RTK", "RTKConeBeamBackend", "check_vectors", "to_rtk_vectors"]

#: Rotation taking ASTRA world coordinates (orbit about z) to RTK's (orbit about y).
ASTRA_TO_RTK = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def to_rtk_vectors(vectors: np.ndarray) -> np.ndarray:
    """Rotate ASTRA ``cone_vec`` rows (s, d, u, v) into RTK's frame with :data:`ASTRA_TO_RTK`."""
    vectors = np.asarray(vectors, dtype=np.float64)
    out = np.empty_like(vectors)
    for c in range(0, 12, 3):
        out[:, c : c + 3] = vectors[:, c : c + 3] @ ASTRA_TO_RTK.T
    return out


def _vol_to_rtk(vol: np.ndarray) -> np.ndarray:
    """(z, y, x) array -> RTK array (z', y', x') = (-y, z, x)."""
    return np.ascontiguousarray(vol.transpose(1, 0, 2)[::-1])


def _vol_from_rtk(arr: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_vol_to_rtk`."""
    return np.ascontiguousarray(arr[::-1].transpose(1, 0, 2))


#: What this module uses from RTK, all for float 3D images: public name -> (SWIG submodule of
#: the ``itk`` package, SWIG class). These are exactly the classes that ``from itk import RTK``
#: gives for ``rtk.<name>[itk.Image[itk.F, 3], itk.Image[itk.F, 3]]`` (or ``[itk.Image[itk.F,
#: 3]]``), as listed in ``itk/Configuration/RTKConfig.py`` of itk 5.4.7 / itk-rtk 2.7.0;
#: ``tests/test_rtk_loading.py`` checks that they are the same class objects.
RTK_CLASSES = {
    "ThreeDCircularProjectionGeometry": (
        "rtkThreeDCircularProjectionGeometryPython",
        "rtkThreeDCircularProjectionGeometry",
    ),
    "JosephForwardProjectionImageFilter": (
        "rtkJosephForwardProjectionImageFilterPython",
        "rtkJosephForwardProjectionImageFilterIF3IF3",
    ),
    "JosephBackProjectionImageFilter": (
        "rtkJosephBackProjectionImageFilterPython",
        "rtkJosephBackProjectionImageFilterIF3IF3SWMFDF",
    ),
    "FDKConeBeamReconstructionFilter": (
        "rtkFDKConeBeamReconstructionFilterPython",
        "rtkFDKConeBeamReconstructionFilterIF3",
    ),
}

#: The FFT factory RTK's ramp filter needs (``FFTImageFilterInit`` in ITKFFTConfig.py), as
#: (SWIG submodule, SWIG class).
_FFT_FACTORY = ("itkVnlFFTImageFilterInitFactoryPython", "itkVnlFFTImageFilterInitFactory")


@functools.cache
def _rtk() -> types.SimpleNamespace:
    """Load the few RTK classes this module uses; cached, one load per process.

    ``from itk import RTK`` is free (itk loads lazily), but the first attribute access loads
    the whole ``RTK`` ITK module with every dependency in ``RTKConfig.depends`` (ITKSmoothing,
    ITKImageNoise, ITKFFT, the IO modules, ... and theirs, e.g. ITKImageIntensity) plus all
    ImageIO factories: 49 compiled ``_ITK*Python`` libraries. Nearly all of that time is the
    loading of those libraries (the wheels link ITK statically into each one: 137 MB for
    ITKImageIntensity, 144 MB for RTK).

    Instead we import only the SWIG submodules that define our classes
    (``itk.rtkJosephForwardProjectionImageFilterPython`` ...): they need only ``_RTKPython``,
    ``_ITKCommonPython`` and ``_ITKPyBasePython``. Images come from the public
    ``itk.image_from_array`` / ``itk.array_from_image`` (itk lazily loads ITKPyBase, ITKCommon
    and ITKBridgeNumPy for them). FDK's ramp filter needs the FFT object factory that the full
    load registers through ITKFFT; :func:`_register_fft_factory` registers the same one (loading
    ``_ITKFFTPython`` only) when :meth:`RTKConeBeamBackend.fdk` first runs. 5 libraries in all.

    Measured with ``/usr/bin/time -v``, fresh processes, itk 5.4.7 / itk-rtk 2.7.0, 2 shared
    cores, min of 3 (``A + Aᵀ``: ``ConeBeam.circular(8, (16, 16, 16), 60, 30, det_shape=(24,
    24), backend="rtk")``, of which the Python + torch + ``unroll3d.physics`` import alone is
    3.0 s, 3.1 s CPU, 824 MB):

    ===========================================  ======  =====  ======
    fresh process                                wall s  CPU s  RSS MB
    ===========================================  ======  =====  ======
    ``import itk; from itk import RTK``            0.14   0.23      37
    ... + first ``RTK.<attr>`` (the full load)    12.6   12.7    1485
    this loader, ``_rtk()`` alone                  4.0    4.1     852
    ``A + Aᵀ`` 16³, full load (before)            13.7   13.8    1680
    ``A + Aᵀ`` 16³, this loader                    6.7    6.8    1075
    ``A + Aᵀ + FDK`` 16³, full load (before)      14.4   14.5    1680
    ``A + Aᵀ + FDK`` 16³, this loader              6.7    6.8    1095
    ===========================================  ======  =====  ======

    (itk imports torch when it is installed, ~1 s of the 4.0 s.) The numbers are bit for bit
    those of the full load. If the installed itk lays its wrappers out differently (a submodule
    or class missing), we warn and fall back to the full ``from itk import RTK``.

    :return: a namespace with the float 3D classes named as in :data:`RTK_CLASSES`, ``fast``
        (whether the fast path was used) and ``register_fft_factory`` (a no-op after a full
        load, which registers the factory itself).
    """
    try:
        import itk  # noqa: F401
    except ImportError as exc:  # pragma: no cover - RTK is a core dependency
        raise ImportError(
            "The rtk backend needs the `itk-rtk` wheels (pip install itk-rtk)."
        ) from exc
    try:
        return _rtk_fast()
    except Exception as exc:  # any layout difference: use the full load
        warnings.warn(
            f"unroll3d: the fast loader of RTK's Python wrappers failed ({exc!r}); falling "
            "back to the full `from itk import RTK` (slower: ~10 s CPU, ~1.5 GB per process).",
            RuntimeWarning,
            stacklevel=2,
        )
        return _rtk_full()


def _rtk_fast() -> types.SimpleNamespace:
    """Import only the SWIG submodules of :data:`RTK_CLASSES`; raises if any is missing."""
    found = {}
    for name, (module, swig_class) in RTK_CLASSES.items():
        try:
            found[name] = getattr(importlib.import_module(f"itk.{module}"), swig_class)
        except (ImportError, AttributeError) as exc:
            raise ImportError(
                f"itk.{module}.{swig_class} (for RTK's {name}) is not where itk 5.4 / "
                f"itk-rtk 2.7 put it: {exc}"
            ) from exc
    return types.SimpleNamespace(**found, fast=True, register_fft_factory=_register_fft_factory)


def _rtk_full() -> types.SimpleNamespace:
    """The same classes through the full ``from itk import RTK`` (itk's documented path)."""
    import itk
    from itk import RTK as rtk

    image_type = itk.Image[itk.F, 3]
    found = {
        "ThreeDCircularProjectionGeometry": rtk.ThreeDCircularProjectionGeometry,
        "JosephForwardProjectionImageFilter": rtk.JosephForwardProjectionImageFilter[
            image_type, image_type
        ],
        "JosephBackProjectionImageFilter": rtk.JosephBackProjectionImageFilter[
            image_type, image_type
        ],
        "FDKConeBeamReconstructionFilter": rtk.FDKConeBeamReconstructionFilter[image_type],
    }
    return types.SimpleNamespace(**found, fast=False, register_fft_factory=lambda: None)


@functools.cache
def _register_fft_factory() -> None:
    """Register ITK's VNL FFT factory (what itk's ``load_factories("FFTImageFilterInit")`` does
    when it loads ITKFFT), loading only ``_ITKFFTPython``; once per process. Falls back, with a
    warning, to the full load (which registers it) if the factory is not where we expect it."""
    module, swig_class = _FFT_FACTORY
    try:
        factory = getattr(importlib.import_module(f"itk.{module}"), swig_class)
    except (ImportError, AttributeError) as exc:
        warnings.warn(
            f"unroll3d: itk.{module}.{swig_class} not found ({exc!r}); registering ITK's FFT "
            "factory through the full `from itk import RTK` instead.",
            RuntimeWarning,
            stacklevel=3,
        )
        _rtk_full()
        return
    factory.RegisterOneFactory()


def check_vectors(vectors: np.ndarray, rtol: float = 1e-4) -> tuple[float, float]:
    """Validate ASTRA ``cone_vec`` vectors for RTK and return the detector spacing.

    :param numpy.ndarray vectors: (n_views, 12) geometry.
    :param float rtol: relative tolerance on orthogonality and on equal pixel sizes.
    :return: ``(du, dv)``, the pixel sizes along a row (``|u|``) and along a column (``|v|``).
    :raises ValueError: wrong shape, non-orthogonal ``u``/``v``, pixel sizes that change between
        views, or a source on the detector plane.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 2 or vectors.shape[1] != 12 or vectors.shape[0] < 1:
        raise ValueError(
            f"cone_vec geometry must have shape (n_views, 12); got {tuple(vectors.shape)}"
        )
    if not np.all(np.isfinite(vectors)):
        raise ValueError("cone_vec geometry contains NaN or infinite values")
    s, d, u, v = vectors[:, 0:3], vectors[:, 3:6], vectors[:, 6:9], vectors[:, 9:12]
    nu, nv = np.linalg.norm(u, axis=1), np.linalg.norm(v, axis=1)
    if np.any(nu == 0) or np.any(nv == 0):
        raise ValueError("detector vectors u and v must be non-zero in every view")
    cos = np.abs(np.sum(u * v, axis=1)) / (nu * nv)
    if np.any(cos > rtol):
        bad = int(np.argmax(cos))
        raise ValueError(
            f"the rtk backend needs orthogonal detector vectors u, v; view {bad} has "
            f"|cos(u, v)| = {cos[bad]:.3g}"
        )
    du, dv = float(np.median(nu)), float(np.median(nv))
    if np.any(np.abs(nu - du) > rtol * du) or np.any(np.abs(nv - dv) > rtol * dv):
        raise ValueError(
            "the rtk backend needs the same detector pixel size in every view; |u| ranges "
            f"{nu.min():.6g}..{nu.max():.6g}, |v| ranges {nv.min():.6g}..{nv.max():.6g}"
        )
    n = np.cross(u, v)
    dist = np.abs(np.sum((d - s) * n, axis=1)) / np.linalg.norm(n, axis=1)
    if np.any(dist <= 0):
        raise ValueError("the source lies on the detector plane in at least one view")
    return du, dv


class RTKConeBeamBackend:
    """Joseph forward/back projection and FDK with RTK for one geometry.

    Works on NumPy float32 arrays: volumes ``(D, H, W)``, projections ``(views, rows, cols)``.

    :param numpy.ndarray vectors: (n_views, 12) ASTRA ``cone_vec`` geometry.
    :param tuple vol_shape: ``(D, H, W)``.
    :param float voxel_size: voxel size, in the unit of ``vectors``.
    :param tuple det_shape: ``(rows, cols)``.
    :param int views_per_chunk: project at most this many views per RTK call (memory); ``None``
        for all at once.
    :param int num_threads: number of ITK threads (``None``: ITK's default).
    """

    def __init__(
        self,
        vectors,
        vol_shape,
        voxel_size: float = 1.0,
        det_shape=(1, 1),
        views_per_chunk: int | None = None,
        num_threads: int | None = None,
    ):
        self.vectors = np.asarray(vectors, dtype=np.float64)
        self.du, self.dv = check_vectors(self.vectors)
        self.vol_shape = tuple(int(n) for n in vol_shape)
        if len(self.vol_shape) != 3:
            raise ValueError(f"vol_shape must be (D, H, W); got {vol_shape}")
        self.voxel_size = float(voxel_size)
        self.det_shape = tuple(int(n) for n in det_shape)
        if len(self.det_shape) != 2:
            raise ValueError(f"det_shape must be (rows, cols); got {det_shape}")
        self.n_views = self.vectors.shape[0]
        self.num_threads = num_threads
        chunk = self.n_views if views_per_chunk is None else max(1, int(views_per_chunk))
        self.chunks = [(i, min(i + chunk, self.n_views)) for i in range(0, self.n_views, chunk)]
        rtk_vectors = to_rtk_vectors(self.vectors)
        self._geometries = [self._geometry(rtk_vectors[a:b]) for a, b in self.chunks]
        self._full_geometry = (
            self._geometries[0] if len(self.chunks) == 1 else self._geometry(rtk_vectors)
        )

    # ---- ITK helpers -------------------------------------------------------------------
    def _geometry(self, vectors):
        rtk = _rtk()
        geometry = rtk.ThreeDCircularProjectionGeometry.New()
        for i, row in enumerate(vectors):
            s, d, u, v = row[0:3], row[3:6], row[6:9], row[9:12]
            ok = geometry.AddProjection(
                [float(t) for t in s],
                [float(t) for t in d],
                [float(t) for t in u / np.linalg.norm(u)],
                [float(t) for t in v / np.linalg.norm(v)],
            )
            if not ok:
                raise ValueError(f"RTK rejected the geometry of view {i}: {row.tolist()}")
        return geometry

    def _image(self, array, spacing, origin):
        import itk

        image = itk.image_from_array(np.ascontiguousarray(array, dtype=np.float32))
        image.SetSpacing([float(t) for t in spacing])
        image.SetOrigin([float(t) for t in origin])
        return image

    def _volume_image(self, array):
        """ITK image of an RTK-ordered volume array, *padded by one zero voxel per side*
        (see :meth:`forward`), centred at the origin."""
        h = self.voxel_size
        origin = [-(n - 1) / 2 * h for n in array.shape[::-1]]
        return self._image(array, (h, h, h), origin)

    def _proj_image(self, array):
        rows, cols = self.det_shape
        origin = (-(cols - 1) / 2 * self.du, -(rows - 1) / 2 * self.dv, 0.0)
        return self._image(array, (self.du, self.dv, 1.0), origin)

    def _run(self, flt):
        if self.num_threads is not None:
            flt.SetNumberOfWorkUnits(int(self.num_threads))
        flt.Update()
        import itk

        return itk.array_from_image(flt.GetOutput())

    # ---- operators ---------------------------------------------------------------------
    def forward(self, volume: np.ndarray) -> np.ndarray:
        """Joseph forward projection of a ``(D, H, W)`` volume to ``(views, rows, cols)``.

        RTK's Joseph projector integrates (trapezoid rule) only between the first and the last
        voxel centre, so a ray along an axis through ``N`` unit voxels gives ``N - 1``. We pad
        the volume with one zero voxel on every side, which turns this into the usual Joseph
        sum over ``N`` slices (the value ASTRA gives: ``N`` voxel sizes) and lets the bilinear
        interpolation fall off to zero outside the volume as in ASTRA. Padding and cropping are
        adjoint, so the pair stays exactly adjoint.
        """
        rtk = _rtk()
        if tuple(volume.shape) != self.vol_shape:
            raise ValueError(f"volume shape {tuple(volume.shape)} != {self.vol_shape}")
        vol = self._volume_image(_vol_to_rtk(np.pad(np.asarray(volume, np.float32), 1)))
        out = np.empty((self.n_views, *self.det_shape), dtype=np.float32)
        for (a, b), geometry in zip(self.chunks, self._geometries, strict=True):
            proj = self._proj_image(np.zeros((b - a, *self.det_shape), np.float32))
            flt = rtk.JosephForwardProjectionImageFilter.New()
            flt.SetInput(0, proj)
            flt.SetInput(1, vol)
            flt.SetGeometry(geometry)
            out[a:b] = self._run(flt)
        return out

    def backward(self, proj: np.ndarray) -> np.ndarray:
        """Joseph back projection (exact adjoint of :meth:`forward`)."""
        rtk = _rtk()
        expected = (self.n_views, *self.det_shape)
        if tuple(proj.shape) != expected:
            raise ValueError(f"projection shape {tuple(proj.shape)} != {expected}")
        padded = _vol_to_rtk(np.empty(tuple(n + 2 for n in self.vol_shape), np.float32)).shape
        out = np.zeros(padded, dtype=np.float32)
        for (a, b), geometry in zip(self.chunks, self._geometries, strict=True):
            vol = self._volume_image(np.zeros(padded, np.float32))
            flt = rtk.JosephBackProjectionImageFilter.New()
            flt.SetInput(0, vol)
            flt.SetInput(1, self._proj_image(proj[a:b]))
            flt.SetGeometry(geometry)
            out += self._run(flt)
        return _vol_from_rtk(out)[1:-1, 1:-1, 1:-1].copy()

    def fdk(self, proj: np.ndarray, hann_cut: float = 0.0) -> np.ndarray:
        """RTK's FDK reconstruction (ramp filter, optional Hann window, angular-gap weights).

        :param float hann_cut: Hann window cut frequency in (0, 1]; 0 for a pure ramp.
        """
        rtk = _rtk()
        expected = (self.n_views, *self.det_shape)
        if tuple(proj.shape) != expected:
            raise ValueError(f"projection shape {tuple(proj.shape)} != {expected}")
        rtk.register_fft_factory()  # the ramp filter's FFT comes from ITK's object factory
        padded = _vol_to_rtk(np.empty(tuple(n + 2 for n in self.vol_shape), np.float32)).shape
        vol = self._volume_image(np.zeros(padded, np.float32))
        flt = rtk.FDKConeBeamReconstructionFilter.New()
        flt.SetInput(0, vol)
        flt.SetInput(1, self._proj_image(proj))
        flt.SetGeometry(self._full_geometry)
        flt.GetRampFilter().SetTruncationCorrection(0.0)
        flt.GetRampFilter().SetHannCutFrequency(float(hann_cut))
        return _vol_from_rtk(self._run(flt))[1:-1, 1:-1, 1:-1].copy()
