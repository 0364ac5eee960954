"""KIP (Nguyen, Chen & Lee 2021; Nguyen, Novak, Xiao & Lee 2021): the kernels (:mod:`.kernels`),
the kernel-ridge-regression loss (:mod:`.krr`) and KIP's ZCA variant (:mod:`.zca`)."""
