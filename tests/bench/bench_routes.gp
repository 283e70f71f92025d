# Plot for tests/bench/bench_routes.sh:
#   gnuplot -e "outdir='..'; pdir='..'; nmax=16384; ex0=..; ex1=.." bench_routes.gp
# pdir/{features,paper}_{0,1}.dat: degree, cpu_s, grad_err, error_bound (n = nmax);
# ex0, ex1: exact's CPU time (non-causal, causal).
set terminal pngcairo size 1200,520 font ",11" noenhanced
set output outdir.'/routes.png'
set multiplot layout 1,2 title sprintf('one head, d_head 8, R = 1, n = %d, one thread', nmax)
set grid
set xlabel 'polynomial degree'
set xtics 1

set title 'forward + backward, CPU time (one thread)'
set ylabel 'seconds'
set logscale y
set key top left
plot pdir.'/features_0.dat' using 1:2 with linespoints lc 1 title 'features', \
     pdir.'/paper_0.dat' using 1:2 with linespoints lc 2 title 'paper', \
     ex0 with lines lc 3 title 'exact', \
     pdir.'/features_1.dat' using 1:2 with linespoints lc 1 dashtype 2 title 'features, causal', \
     pdir.'/paper_1.dat' using 1:2 with linespoints lc 2 dashtype 2 title 'paper, causal', \
     ex1 with lines lc 3 dashtype 2 title 'exact, causal'

set title 'gradient error against exact (worst of dq, dk, dv)'
set ylabel 'relative error'
set key top right
plot pdir.'/features_0.dat' using 1:3 with linespoints lc 1 title 'features', \
     pdir.'/paper_0.dat' using 1:3 with linespoints lc 2 title 'paper', \
     pdir.'/features_1.dat' using 1:3 with linespoints lc 1 dashtype 2 title 'features, causal', \
     pdir.'/paper_1.dat' using 1:3 with linespoints lc 2 dashtype 2 title 'paper, causal', \
     pdir.'/paper_0.dat' using 1:4 with lines lc 0 dashtype 3 title 'entrywise bound'
unset multiplot
