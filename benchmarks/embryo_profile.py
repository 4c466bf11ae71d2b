"""Intensity profile of nuclei against the distance to their mask edge, real annotation vs
qca_tf.synthetic (the check behind embryo-small run b, docs/BENCHMARKS.md):
median (I - background) / (p90 inside - background) in 0.8 um shells.

    python benchmarks/embryo_profile.py
"""
import numpy as np
from scipy import ndimage
from qca_tf import io, synthetic
R="/work/shared/data/qcanet-example-8cell/"
im=io.read_stack(R+"image.tif").astype(np.float32); gt=io.read_stack(R+"nsn_gt.tif")>0
bg=np.percentile(im,5)
print("bg p5",bg,"p50",np.percentile(im,50),"p99.8",np.percentile(im,99.8))
# intensity as a function of signed distance to mask boundary (anisotropic sampling)
samp=(1.75,0.8,0.8)
din=ndimage.distance_transform_edt(gt,sampling=samp); dout=ndimage.distance_transform_edt(~gt,sampling=samp)
sd=np.where(gt,-din,dout)
lab,n=ndimage.label(gt)
def prof(im,sd,name):
    peak=np.percentile(im[sd<-2],90); b=np.percentile(im[sd>6],50)
    print(name,"inside p90",peak,"far bg",b)
    for lo in np.arange(-4,5,0.8):
        m=(sd>=lo)&(sd<lo+0.8)
        v=np.median(im[m]); print(f"  d[{lo:+.1f},{lo+0.8:+.1f}) um: median {(v-b)/(peak-b):.2f} n={m.sum()}")
prof(im,sd,"real")
# fraction of mask below 50% of per-nucleus peak
for i in range(1,n+1):
    m=lab==i; p=np.percentile(im[m],95); b=np.percentile(im[sd>6],50)
    print(i,"vol",m.sum(),"frac of mask voxels < half peak:",round(float(((im[m]-b)<(p-b)/2).mean()),2), "frac of voxels >half peak within 1.6um outside that are out of mask:")
cfg = synthetic.SynthConfig(shape=(48,112,112), voxel_size=(0.8,0.8,1.75), n_nuclei=8, radius_um=(4.5,7.5), touching_pairs=2, polar_bodies=1, timepoints=1, division_interval=2, seed=1)
f=synthetic.make_series(cfg)[0]
sg=f.labels>0
din=ndimage.distance_transform_edt(sg,sampling=samp); dout=ndimage.distance_transform_edt(~sg,sampling=samp)
prof(f.image.astype(np.float32),np.where(sg,-din,dout),"synth")
