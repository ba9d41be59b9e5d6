#map = affine_map<(d0, d1) -> (d0, d1)>
#map1 = affine_map<(d0, d1) -> (d0)>
#map2 = affine_map<(d0, d1) -> (d1)>
module {
  func.func @main(%arg0: tensor<4x8xf64>, %arg1: tensor<8xf64>) -> tensor<4x8xf64> {
    %cst = arith.constant 0.000000e+00 : f64
    %0 = tensor.empty() : tensor<4xf64>
    %1 = linalg.fill ins(%cst : f64) outs(%0 : tensor<4xf64>) -> tensor<4xf64>
    %2 = linalg.generic {indexing_maps = [#map, #map1], iterator_types = ["parallel", "reduction"]} ins(%arg0 : tensor<4x8xf64>) outs(%1 : tensor<4xf64>) {
    ^bb0(%in: f64, %out: f64):
      %5 = arith.mulf %in, %in : f64
      %6 = arith.addf %out, %5 : f64
      linalg.yield %6 : f64
    } -> tensor<4xf64>
    %3 = tensor.empty() : tensor<4x8xf64>
    %4 = linalg.generic {indexing_maps = [#map, #map1, #map2, #map], iterator_types = ["parallel", "parallel"]} ins(%arg0, %2, %arg1 : tensor<4x8xf64>, tensor<4xf64>, tensor<8xf64>) outs(%3 : tensor<4x8xf64>) {
    ^bb0(%in: f64, %in_0: f64, %in_1: f64, %out: f64):
      %cst_2 = arith.constant 1.250000e-01 : f64
      %5 = arith.mulf %in_0, %cst_2 : f64
      %cst_3 = arith.constant 9.9999999999999995E-7 : f64
      %6 = arith.addf %5, %cst_3 : f64
      %7 = math.rsqrt %6 : f64
      %8 = arith.mulf %in, %7 : f64
      %9 = arith.mulf %8, %in_1 : f64
      linalg.yield %9 : f64
    } -> tensor<4x8xf64>
    return %4 : tensor<4x8xf64>
  }
}
