"""A/B of the CPU selective_scan with its element-wise work fused in C (csrc/scan_elem.h) against the
same C scan with softplus/bias and the D/z gate as separate torch ops, alternating in one process
(thread CPU time, so other jobs on the machine do not skew the pair).

    PYTHONPATH=. python bench/ab_fused_scan.py
"""
import torch, time
torch.set_num_threads(1)
from core.ops import cpu_scan, selective_scan
g=torch.Generator().manual_seed(0)
b,d,L,N=2,256,4096,16
mk=lambda *s,scale=1.0:(torch.randn(*s,generator=g)*scale).requires_grad_()
u,delta,z=mk(b,d,L),mk(b,d,L,scale=0.5),mk(b,d,L)
A=(-torch.rand(d,N,generator=g)-0.1).requires_grad_(); B,C,D,bias=mk(b,N,L),mk(b,N,L),mk(d),mk(d,scale=0.1)
P=[u,delta,z,A,B,C,D,bias]
fused=lambda: selective_scan(u,delta,A,B,C,D=D,z=z,delta_bias=bias,delta_softplus=True,backend="cpu")
unf=lambda: cpu_scan.selective_scan_with(cpu_scan._cpu_core,u,delta,A,B,C,D=D,z=z,delta_bias=bias,delta_softplus=True)
def run(f,bwd):
    t=time.thread_time(); y=f()
    if bwd: y.sum().backward(); [setattr(p,'grad',None) for p in P]
    return time.thread_time()-t
for bwd in (False,True):
    res={"fused":[], "unfused":[]}
    for i in range(8):
        for k,f in (("fused",fused),("unfused",unf)):
            if bwd: res[k].append(run(f,True))
            else:
                with torch.no_grad(): res[k].append(run(f,False))
    print("fwd+bwd" if bwd else "fwd", {k:round(sorted(v)[len(v)//2]*1e3,1) for k,v in res.items()}, {k:round(min(v)*1e3,1) for k,v in res.items()})
