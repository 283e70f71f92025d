# Plots for tests/bench/bench_approx.sh: gnuplot -e "outdir='..'; plots=\"..\"; pdir='..'"
# plots is the plot command list the script builds (one series per method, d_head, causal).
set terminal pngcairo size 900,620 font ",11" noenhanced
set grid

set output outdir.'/approx_time.png'
set title 'altgrad whole-model gradient time (d_model 64, 1 layer, R = 1 after centring)'
set xlabel 'sequence length n'
set ylabel 'time per gradient (s)'
set logscale xy
set key top left
eval('plot '.plots)

set output outdir.'/approx_error.png'
set title 'approximate gradients against exact (d_head 8, n 4096, R = 1)'
set xlabel 'polynomial degree'
set ylabel 'relative error'
set logscale y
unset logscale x
set key top right
plot pdir.'/degree_0.dat' using 1:2 with linespoints title 'worst gradient, non-causal', \
     pdir.'/degree_1.dat' using 1:2 with linespoints title 'worst gradient, causal', \
     pdir.'/degree_0.dat' using 1:3 with lines dashtype 2 title 'a-priori bound (entrywise)'
