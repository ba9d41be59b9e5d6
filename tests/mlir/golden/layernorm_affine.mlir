#map = affine_map<(d0, d1) -> (d0, d1)>
#map1 = affine_map<(d0, d1) -> (d0)>
#map2 = affine_map<(d0, d1) -> (d1)>
module {
  func.func @main(%arg0: tensor<4x8xf32>, %arg1: tensor<8xf32>, %arg2: tensor<8xf32>) -> tensor<4x8xf32> {
    %cst = arith.constant 0.000000e+00 : f32
    %0 = tensor.empty() : tensor<4xf32>
    %1 = linalg.fill ins(%cst : f32) outs(%0 : tensor<4xf32>) -> tensor<4xf32>
    %2 = linalg.generic {indexing_maps = [#map, #map1], iterator_types = ["parallel", "reduction"]} ins(%arg0 : tensor<4x8xf32>) outs(%1 : tensor<4xf32>) {
    ^bb0(%in: f32, %out: f32):
      %8 = arith.addf %in, %out : f32
      linalg.yield %8 : f32
    } -> tensor<4xf32>
    %cst_0 = arith.constant 0.000000e+00 : f32
    %3 = tensor.empty() : tensor<4xf32>
    %4 = linalg.fill ins(%cst_0 : f32) outs(%3 : tensor<4xf32>) -> tensor<4xf32>
    %5 = linalg.generic {indexing_maps = [#map, #map1, #map1], iterator_types = ["parallel", "reduction"]} ins(%arg0, %2 : tensor<4x8xf32>, tensor<4xf32>) outs(%4 : tensor<4xf32>) {
    ^bb0(%in: f32, %in_1: f32, %out: f32):
      %cst_2 = arith.constant 1.250000e-01 : f32
      %8 = arith.mulf %in_1, %cst_2 : f32
      %9 = arith.subf %in, %8 : f32
      %10 = arith.mulf %9, %9 : f32
      %11 = arith.addf %out, %10 : f32
      linalg.yield %11 : f32
    } -> tensor<4xf32>
    %6 = tensor.empty() : tensor<4x8xf32>
    %7 = linalg.generic {indexing_maps = [#map, #map1, #map1, #map2, #map2, #map], iterator_types = ["parallel", "parallel"]} ins(%arg0, %2, %5, %arg1, %arg2 : tensor<4x8xf32>, tensor<4xf32>, tensor<4xf32>, tensor<8xf32>, tensor<8xf32>) outs(%6 : tensor<4x8xf32>) {
    ^bb0(%in: f32, %in_1: f32, %in_2: f32, %in_3: f32, %in_4: f32, %out: f32):
      %cst_5 = arith.constant 1.250000e-01 : f32
      %8 = arith.mulf %in_1, %cst_5 : f32
      %9 = arith.subf %in, %8 : f32
      %cst_6 = arith.constant 1.250000e-01 : f32
      %10 = arith.mulf %in_2, %cst_6 : f32
      %cst_7 = arith.constant 9.99999974E-6 : f32
      %11 = arith.addf %10, %cst_7 : f32
      %12 = math.rsqrt %11 : f32
      %13 = arith.mulf %9, %12 : f32
      %14 = arith.mulf %13, %in_3 : f32
      %15 = arith.addf %14, %in_4 : f32
      linalg.yield %15 : f32
    } -> tensor<4x8xf32>
    return %7 : tensor<4x8xf32>
  }
}
