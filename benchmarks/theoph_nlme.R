# R nlme peer of benchmarks/bench_theoph_nlme.py: the fm2 fit of the theophylline data (Pinheiro & Bates
# 2000, ch. 8) on the same NONMEM-style file that pkmodel fits (tests/data/theoph/Theoph_nonmem.csv).
#
# Usage: Rscript theoph_nlme.R DATA.csv REPEATS
# Prints "key value" lines: nlme_seconds and nlme_cpu_seconds (mean wall and CPU time of one fit over
# REPEATS), the fixed effects,
# the random-effect and residual SDs, and the log-likelihood.
args <- commandArgs(trailingOnly = TRUE)
path <- args[1]
repeats <- as.integer(args[2])
suppressPackageStartupMessages(library(nlme))

d <- read.csv(path)
doses <- d[d$EVID == 1, ]
obs <- d[d$EVID == 0, ]
k <- match(obs$ID, doses$ID)
theoph <- data.frame(
  Subject = factor(obs$ID),
  Time = obs$TIME,
  conc = obs$DV,
  Dose = doses$AMT[k] / doses$WT[k]  # mg/kg, as in datasets::Theoph
)

fit <- function() {
  nlme(conc ~ SSfol(Dose, Time, lKe, lKa, lCl), data = theoph, groups = ~Subject,
       fixed = lKe + lKa + lCl ~ 1, random = pdDiag(lKa + lCl ~ 1), start = c(-2.4, 0.45, -3.2))
}

fm2 <- fit()  # warm-up (and the estimates printed below)
timing <- system.time(for (i in seq_len(repeats)) fit())
elapsed <- timing[["elapsed"]] / repeats
cpu <- (timing[["user.self"]] + timing[["sys.self"]]) / repeats

cat(sprintf("nlme_version %s\n", as.character(packageVersion("nlme"))))
cat(sprintf("r_version %s\n", gsub(" ", "_", R.version.string)))
cat(sprintf("nlme_seconds %.6f\n", elapsed))
cat(sprintf("nlme_cpu_seconds %.6f\n", cpu))
fe <- fixef(fm2)
for (n in names(fe)) cat(sprintf("%s %.6f\n", n, fe[[n]]))
sds <- as.numeric(VarCorr(fm2)[, "StdDev"])
cat(sprintf("sd_lKa %.6f\nsd_lCl %.6f\nsd_residual %.6f\n", sds[1], sds[2], sds[3]))
cat(sprintf("logLik %.4f\n", as.numeric(logLik(fm2))))
